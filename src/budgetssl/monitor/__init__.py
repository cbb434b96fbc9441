"""Label-free monitors of what a representation holds, and the collapse verdict read from them.

- `measures`: pure functions on tensors (effective rank, std of the L2-normalised embedding, the
  prototype statistics of DINO-like methods), each testable alone;
- `collapse`: the rules that name a collapsed run from its monitors at initialisation and at the end;
- `watch`: the monitor a pretraining runs on a fixed held-out batch (the loop calls it; it knows the
  method only through Method.monitor_outputs), and the record's summary of its history.
"""
