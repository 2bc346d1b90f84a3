"""Schemathesis hooks for cema's OpenAPI document (docs/openapi.yaml): generators for the two
binary media types, which the document describes in prose only. They make bodies the document calls
valid (schemathesis expects those accepted); malformed bodies are the Rust tests' job
(crates/cema-cloud/tests/http.rs). Loaded by tools/api_conformance.py; CEMA_NORM_STATE names a file with a valid norm state
of the served model (the test writes it), CEMA_MODEL_ID and CEMA_GEOMETRY (HxWxC) the upload's."""

import os
import struct

import schemathesis
from hypothesis import strategies as st

MODEL_ID = os.environ.get("CEMA_MODEL_ID", "edge").encode()
H, W, C = (int(x) for x in os.environ.get("CEMA_GEOMETRY", "28x28x1").split("x"))
with open(os.environ["CEMA_NORM_STATE"], "rb") as f:
    NORM_STATE = f.read()


@st.composite
def uploads(draw):
    """Well-formed uploads: a few sequence numbers (most out of order: 409), 0..4 images."""
    seq = draw(st.integers(0, 3))
    n = draw(st.integers(0, 4))
    body = (
        b"CEMAUP01"
        + struct.pack("<QQH", seq, draw(st.integers(0, 2)), len(MODEL_ID))
        + MODEL_ID
        + struct.pack("<IHHBB", n, H, W, C, 0)
        + draw(st.binary(min_size=n * H * W * C, max_size=n * H * W * C))
    )
    return body


schemathesis.openapi.media_type("application/x-cema-upload", uploads())
schemathesis.openapi.media_type("application/x-cema-norm-state", st.just(NORM_STATE))
