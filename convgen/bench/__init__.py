"""Measurement for `convgen bench`: interleaved timing, the peak and bandwidth probes
(measure) and the peers convgen is compared with (peers)."""
