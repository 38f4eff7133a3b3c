"""PairCustomization defaults the command line shows in --help (no torch here)."""

#: The official targets: every module whose name ends in one of these (q, k, v, out of attn1 and attn2).
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
#: The official code's ``orthonormal_basis_seed``.
DEFAULT_BASIS_SEED = 123846
#: Samplers of ``pair apply`` (a photo given with --image is always regenerated with DDIM).
SCHEDULERS = ("pndm", "ddim", "euler", "euler_a", "dpm")
