"""``styleforge cache info|clear``: what the on-disk caches hold, and emptying them."""

from __future__ import annotations

from .common import add_subcommand

#: (name, folder under the cache home) of the caches styleforge writes; every entry is a .safetensors file
CACHES = (("inversions", "inversions"), ("text embeddings", "directions"))


def register(sub) -> None:
    p = add_subcommand(sub, "cache", help="show or empty styleforge's caches (inversions, text embeddings)",
                       description="styleforge caches inversions (keyed by image content, the fingerprint of the model's "
                                   "weights and every setting) and mean text embeddings under $STYLEFORGE_CACHE "
                                   "(default ~/.cache/styleforge). The inversion cache keeps at most "
                                   "$STYLEFORGE_CACHE_MAX_SIZE (default 2G), least recently used entries evicted first.")
    actions = p.add_subparsers(dest="cache_command", metavar="ACTION", title="actions")
    info = add_subcommand(actions, "info", help="where the caches are, how many entries and bytes they hold")
    info.set_defaults(func=run_info)
    clear = add_subcommand(actions, "clear", help="delete every cached entry (and the remembered weight hashes)")
    clear.set_defaults(func=run_clear)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def _folders():
    from ..cache import LRUFolder, cache_home, max_bytes_from_env

    home = cache_home()
    return home, [(name, LRUFolder(home / sub, ".safetensors", max_bytes_from_env())) for name, sub in CACHES]


def run_info(args) -> int:
    from ..cache import MAX_SIZE_ENV, format_size, max_bytes_from_env

    home, folders = _folders()
    print(f"cache folder: {home}")
    for name, folder in folders:
        usage = folder.usage()
        print(f"{name}: {usage.entries} entries, {format_size(usage.bytes)} in {folder.root}")
    print(f"inversion cache cap: {format_size(max_bytes_from_env())} (${MAX_SIZE_ENV})")
    return 0


def run_clear(args) -> int:
    from ..cache import format_size, forget_weight_hashes

    home, folders = _folders()
    for name, folder in folders:
        usage = folder.clear()
        print(f"removed {usage.entries} {name} entries ({format_size(usage.bytes)}) from {folder.root}")
    forget_weight_hashes()
    return 0
