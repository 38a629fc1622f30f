"""A cryptographic mask generator for Flower's SecAgg+.

Why it exists: SecAgg+ hides each node's update behind masks expanded from secrets (a
node's private seed, and a key agreed with each neighbour). Flower 1.42's ``pseudo_rand_gen``
XOR-folds that secret to a 32-bit seed and expands it with NumPy's Mersenne Twister: 2**32
possible masks per secret, and an output from which MT19937's state can be recovered. Both
make the masks guessable, so the server could strip them. This module replaces it with
ChaCha20 keyed by all the secret's bits (SHA-256 of a domain label and the secret), and
installs the replacement in both places Flower looks it up: the node's ``secaggplus_mod``
and the server's ``secaggplus_workflow``. Both sides must use the same generator or the masks
do not cancel, so the server announces :data:`MASK_GENERATOR` in every round plan and nodes
refuse to train for a server announcing another one.

``install`` is called when ``client.app`` and ``server.app`` are imported, which covers every
process that runs either side (Ray actors, per-message node processes, the server).
"""

from __future__ import annotations

import hashlib
import importlib
import math
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from flwr.common.secure_aggregation import secaggplus_utils as flower_utils

# By module path: the package re-exports a *function* named secaggplus_mod over the module.
flower_mod = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
flower_workflow = importlib.import_module(
    "flwr.server.workflow.secure_aggregation.secaggplus_workflow"
)

#: The name the server announces and nodes check; changes whenever the output would.
MASK_GENERATOR = "chacha20-sha256-v1"
#: Flower's own generator, kept so tests can show what the replacement fixes.
FLOWER_MASK_GENERATOR = flower_utils.pseudo_rand_gen
_DOMAIN = b"fedlora secure-aggregation mask v1\x00"
_NONCE = bytes(16)  # every key is used for one keystream only, so a fixed nonce is safe


def chacha20_masks(
    seed: bytes, num_range: int, dimensions_list: Sequence[tuple[int, ...]]
) -> list[np.ndarray]:
    """Uniform integer masks in ``[0, num_range)``, one array per shape, from ``seed``.

    Drop-in replacement for ``flwr.common.secure_aggregation.secaggplus_utils.pseudo_rand_gen``.

    Parameters
    ----------
    seed
        The secret (any length; Flower passes 32 random bytes or a 44-byte encoded key).
    num_range
        The modulus, a power of two between 2 and 2**62 (Flower requires a power of two).
    dimensions_list
        Shapes of the arrays to mask; ``()`` gives a 0-d array.

    Returns
    -------
    list of numpy.ndarray
        int64 arrays with the given shapes.

    Raises
    ------
    ValueError
        If ``seed`` is empty or ``num_range`` is not a power of two in range.
    """
    if not seed:
        raise ValueError("the mask seed is empty")
    if not (2 <= num_range <= 2**62 and num_range & (num_range - 1) == 0):
        raise ValueError(f"num_range must be a power of two in [2, 2**62], got {num_range}")
    key = hashlib.sha256(_DOMAIN + bytes(seed)).digest()
    sizes = [math.prod(shape) for shape in dimensions_list]
    stream = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()
    words = np.frombuffer(stream.update(bytes(8 * sum(sizes))), dtype="<u8")
    values = (words & np.uint64(num_range - 1)).astype(np.int64)
    masks, start = [], 0
    for shape, size in zip(dimensions_list, sizes, strict=True):
        masks.append(values[start : start + size].reshape(shape))
        start += size
    return masks


def install() -> None:
    """Make Flower's SecAgg+ node mod and server workflow use :func:`chacha20_masks`."""
    for module in (flower_mod, flower_workflow):
        vars(module)["pseudo_rand_gen"] = chacha20_masks


def installed_generator() -> str:
    """The name of the generator both Flower modules use now, or a description of the mix."""
    node, server = flower_mod.pseudo_rand_gen, flower_workflow.pseudo_rand_gen
    if node is chacha20_masks and server is chacha20_masks:
        return MASK_GENERATOR
    if node is FLOWER_MASK_GENERATOR and server is FLOWER_MASK_GENERATOR:
        return "flower-mt19937-32bit"
    return "mixed"
