"""The wire contracts of imaging-uploader: envelope, events and topics (pydantic only)."""
