"""Reduced JPEG decoding for MJPEG sources (MJPG files, HTTP MJPEG streams).

libjpeg can decode a JPEG at 1/2, 1/4 or 1/8 of its size (it skips the high DCT
coefficients) and luma only, for much less work than a full colour decode followed by a
shrink. When the model's input is much smaller than the frame, the capture thread asks
FFmpeg for the undecoded packets (``CAP_PROP_FORMAT = -1``) and decodes each one with
``cv2.imdecode(..., IMREAD_REDUCED_*)`` at the largest reduction that still leaves the part of
the frame the model sees at least as large as the model's input, so preprocessing still
only shrinks. Gray models get the luma plane straight from the JPEG.

The sink says what the model needs through ``decode_plan(width, height) -> (factor, gray)``
(``FramePreprocessor.decode_plan``); it is asked again for every frame, so a model swap
changes the decode from the next frame on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import cv2
import numpy as np

from agent.capture.sources import VideoCaptureLike

log = logging.getLogger(__name__)

DecodePlan = Callable[[int, int], "tuple[int, bool]"]
MJPEG_FOURCCS = ("MJPG", "mjpg", "MJPEG", "jpeg", "JPEG")

_FLAGS = {(1, False): cv2.IMREAD_COLOR, (2, False): cv2.IMREAD_REDUCED_COLOR_2,
          (4, False): cv2.IMREAD_REDUCED_COLOR_4, (8, False): cv2.IMREAD_REDUCED_COLOR_8,
          (1, True): cv2.IMREAD_GRAYSCALE, (2, True): cv2.IMREAD_REDUCED_GRAYSCALE_2,
          (4, True): cv2.IMREAD_REDUCED_GRAYSCALE_4, (8, True): cv2.IMREAD_REDUCED_GRAYSCALE_8}


def fourcc_of(cap: VideoCaptureLike) -> str:
    code = int(cap.get(cv2.CAP_PROP_FOURCC) or 0)
    return "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).strip("\0 ")


class JpegPackets:
    """Decodes the raw MJPEG packets of one open capture, as the sink's plan asks."""

    def __init__(self, cap: VideoCaptureLike, plan: DecodePlan) -> None:
        self.plan = plan
        self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        self.reduction = 1
        self.gray = False

    @classmethod
    def open(cls, cap: VideoCaptureLike, plan: DecodePlan | None) -> JpegPackets | None:
        """Switch ``cap`` to raw packets when it carries MJPEG and a reduced decode pays off;
        None (``cap`` unchanged) otherwise."""
        if plan is None or fourcc_of(cap) not in MJPEG_FOURCCS:
            return None
        packets = cls(cap, plan)
        if packets.width and packets.height and plan(packets.width, packets.height) == (1, False):
            return None  # the full colour decode is what the model needs anyway
        if not cap.set(cv2.CAP_PROP_FORMAT, -1):
            return None
        return packets

    def decode(self, packet: np.ndarray | None) -> np.ndarray | None:
        """The frame, reduced as planned; None when the packet is not a decodable JPEG."""
        if packet is None or packet.dtype != np.uint8 or packet.size < 4:
            return None
        if packet.ndim == 3:  # the backend decoded after all
            return packet
        if self.width and self.height:
            self.reduction, self.gray = self.plan(self.width, self.height)
        flag = _FLAGS.get((self.reduction, self.gray), cv2.IMREAD_COLOR)
        img = cv2.imdecode(packet.reshape(-1), flag)
        if img is None:
            return None
        h, w = img.shape[:2]
        self.width, self.height = w * self.reduction, h * self.reduction  # follows size changes
        return img
