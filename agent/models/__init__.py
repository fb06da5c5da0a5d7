"""Models on the device: store, receiver of pushed models, wire format, signing."""
