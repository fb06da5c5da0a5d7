"""Transitional: moved to ``bench/support/agent_proc.py``; import from there. Kept only so that
branches written before the move still import; delete once they have landed."""

from pathlib import Path

from agent.demo import write_digits_video
from bench.support.agent_proc import DATA, REPO, AgentProcess, agent_config  # noqa: F401


def digits_video(path: Path, fps: float = 30.0, size: int = 112) -> list[str]:
    return write_digits_video(path, fps, size)
