"""The accelerator core: fetch, decode, queues, semaphores, memories, engines, registers.

docs/ACCELERATOR.md describes the machine; one module per component, shared interface
signatures in :mod:`hw.core.signatures`, instruction field views generated from the ISA
table in :mod:`hw.core.isa_layout`.
"""
