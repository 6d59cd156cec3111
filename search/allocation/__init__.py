"""The post-training allocation: how one trained checkpoint is stored and evaluated, chosen without retraining
(allocator.py has the steps and where each is decided). `search allocate` runs it alone (command.py)."""

from search.allocation.allocator import AllocationRequest, allocate
from search.allocation.candidates import AllocationResult, Candidate, write_candidate
from search.allocation.options import FormatChoices, make_units

__all__ = ["AllocationRequest", "AllocationResult", "Candidate", "FormatChoices", "allocate", "make_units", "write_candidate"]
