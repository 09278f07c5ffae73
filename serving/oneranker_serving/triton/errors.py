"""The one per-request error response of every Python model.

Raising inside `execute` fails every request of the dynamic batch (and `raise TritonError` is
broken in tritonserver 2.51), so a bad request gets its own error response and the others in the
batch are answered normally.
"""

from __future__ import annotations


def error_response(pb, message: str, code=None):
    """pb_utils.InferenceResponse carrying only an error (INVALID_ARG unless `code` is given)."""
    code = pb.TritonError.INVALID_ARG if code is None else code
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message, code))
