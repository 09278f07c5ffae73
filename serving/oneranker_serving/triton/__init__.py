"""Triton glue, with `pb_utils` passed in (so a fake can stand in for it in unit tests):
`models` (one class per Python model), `arrays` (contract arrays <-> requests and responses),
`batching` (the graphs topology's engine models), `codec` (tensor transport), `errors`
(per-request errors)."""
