"""Index choice from a memory budget, and its bytes-per-vector arithmetic."""

import pytest

from scaleclust.index.choose import choose_index, default_nlist

NESTED = 4000 * 16 + 64 * 512 * 4  # nlist 4000 at 1M rows: nested quantizer (64 top cells): ids, direct map, top


def test_flat_when_it_fits_and_arithmetic():
    spec = choose_index(1_000_000, 512, budget_bytes=4 * 2**30)
    assert spec.kind == "ivf_flat" and spec.factory == "IVF4000(IVF64,Flat),Flat"
    assert spec.bytes_per_vector == 512 * 4 + 8
    assert spec.total_bytes == 1_000_000 * 2056 + 4000 * 512 * 4 + NESTED
    assert choose_index(100_000, 512).factory == "IVF1265,Flat"  # below 2048 lists the quantizer is flat
    assert spec.to_dict()["arithmetic"].endswith(f"= {spec.total_bytes} bytes")


def test_flips_to_pq_when_budget_is_small():
    n, d = 1_000_000, 512
    spec = choose_index(n, d, budget_bytes=100 * 10**6)  # flat needs ~2 GB
    assert spec.kind == "ivf_pq" and spec.pq_m == 64
    assert spec.bytes_per_vector == 64 + 8  # M one-byte codes + int64 id
    assert spec.fixed_bytes == spec.nlist * d * 4 + NESTED + 256 * d * 4  # centroids + PQ codebooks
    assert spec.total_bytes <= 100 * 10**6
    smaller = choose_index(n, d, budget_bytes=50 * 10**6)
    assert smaller.kind == "ivf_pq" and smaller.pq_m == 32 and smaller.bytes_per_vector == 40
    assert smaller.factory == "IVF4000(IVF64,Flat),PQ32x8np"


def test_fp16_and_config_overrides():
    assert choose_index(10**6, 512, budget_bytes=1_100 * 10**6, fp16=True).bytes_per_vector == 1032
    spec = choose_index(10**6, 512, kind="ivf_pq", pq_m=16, nlist=1024)
    assert (spec.kind, spec.pq_m, spec.nlist) == ("ivf_pq", 16, 1024)
    assert spec.factory == "IVF1024,PQ16x8np"
    with pytest.raises(ValueError, match="pq_m"):
        choose_index(1000, 100, kind="ivf_pq", pq_m=48)


def test_budget_too_small_names_the_field():
    with pytest.raises(ValueError, match="memory_budget"):
        choose_index(10**6, 512, budget_bytes=10**6)


def test_nlist_grows_with_sqrt_n_then_with_n_and_is_clamped():
    assert default_nlist(1_000_000) == 4000  # 4 sqrt(n): lists of 250 rows
    assert default_nlist(4_000_000) == 15625  # n / 256: lists stay at 256 rows, not 500
    assert default_nlist(2_300_000_000) == 1 << 20  # the cap
    assert default_nlist(1000) == 25  # 1000 // 39: enough points per centroid
    assert default_nlist(10) == 1


def test_refine_and_opq_apply_to_pq_only_and_stay_out_of_the_ram_budget():
    n, d = 1_000_000, 512
    spec = choose_index(n, d, budget_bytes=100 * 10**6, opq=True, refine_factor=20)
    assert spec.kind == "ivf_pq" and spec.factory == "OPQ64,IVF4000(IVF64,Flat),PQ64x8np"
    assert spec.bytes_per_vector == 72 and spec.stored_bytes_per_vector == 2 * d  # on disk, memory-mapped
    assert spec.fixed_bytes == spec.nlist * d * 4 + NESTED + 256 * d * 4 + d * d * 4  # + the OPQ rotation
    assert spec.total_bytes <= 100 * 10**6 and spec.to_dict()["refine_factor"] == 20
    flat = choose_index(n, d, opq=True, refine_factor=20)
    assert (flat.kind, flat.opq, flat.refine_factor, flat.stored_bytes_per_vector) == ("ivf_flat", False, 0, 0)
    assert choose_index(n, d, kind="ivf_pq", pq_m=64).stored_bytes_per_vector == 0  # no re-ranking asked
