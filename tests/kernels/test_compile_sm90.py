"""Every ``@triton.jit`` kernel in ``hst_fast.kernels`` compiles for an H100 (sm_90) in every config it can run, at
every HST width, without spilling, on a machine without a GPU, with the pinned Triton and with the GPU machine's.

The CPU interpreter accepts things the compiler rejects (non-constexpr globals, ``tl.dot`` tiles under 16, dtype
mismatches, too much shared memory) and says nothing about registers, so the kernel tests alone do not prove the
kernels build for a GPU, or run well there. This test runs ``compile_sm90.py`` beside it in a fresh interpreter with
``TRITON_INTERPRET`` unset (``conftest.py`` sets it for the whole session before the kernels are imported, and then
``@triton.jit`` returns interpreter functions); it lowers each kernel through Triton's ahead-of-time path,
``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``, down to a cubin with the ``ptxas`` inside the
Triton wheel, and reads registers, spills and shared memory from it.

Twice: with the pinned Triton (torch 2.13's), and with the one the GPU machine's torch 2.11 brings
(``requirements/gpu-triton.txt``, put first on the helper's path). Their code generation differs: Triton 3.6 passed a
jit helper's constexpr default on as a plain ``str`` (three backward kernels did not compile at all) and
gives ptxas code it compiles into other register counts (fp32 ``side_ffn`` configs clean under 3.7 spilled under 3.6).

Cases (144 per Triton): each of the 10 kernels at fp32 and bf16 and every HST width (side ops: 32, 48, 64, 72
classification, 64, 128, 256, 384 detection; ``layer_norm`` also ViT-B's 768). A case compiles every config the
launcher can run: all that the autotuned kernels' ``early_config_prune`` keeps (``side_ffn``'s three,
``side_attention``'s forward), the launcher's own choice otherwise, with every optional output on (the training path).
A case passes if every one of them compiles, spills nothing and fits the H100's 227 KiB of shared memory: the
autotuner may pick any of them, so the prune functions drop configs that would spill or not fit.
``compile_table.md`` beside this file holds the worst registers, spills and shared memory per kernel and Triton
(``compile_sm90.py --table``).

The 142 distinct compilations run in ``os.cpu_count()`` processes: about 40 s per Triton on 2 CPU cores with an empty
Triton cache (``compile_table.md``), seconds on reruns (Triton's cache). Spilling configs compile slowly (fp32 ones took
up to 140 s each, 510 s in all before the prunes and the chunked ``side_attention`` backward removed them). Skipped,
never failed, where the installed Triton has no CUDA backend or no ``ptxas``, or (the GPU machine's) is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

_HELPER = Path(__file__).with_name("compile_sm90.py")
_spec = importlib.util.spec_from_file_location("compile_sm90", _HELPER)
compile_sm90 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compile_sm90)

# The Triton the GPU machine's torch 2.11 brings (requirements/gpu-triton.txt), installed by ``make install`` without
# dependencies beside the pinned one; put first on the helper's path, it compiles with the same torch.
GPU_TRITON = Path(sys.prefix) / "triton-gpu"
GPU_TRITON_VERSION = re.search(r"^triton==(\S+)", (_HELPER.parents[2] / "requirements" / "gpu-triton.txt").read_text(),
                               re.M).group(1)


@pytest.fixture(scope="module", params=["pinned", "gpu-machine"], ids=["pinned-triton", "gpu-machine-triton"])
def compiled(request, tmp_path_factory) -> dict[str, dict]:
    """Runs the helper once for all cases with one Triton: the pinned one, or the GPU machine's; results by case id."""
    out = tmp_path_factory.mktemp("compile_sm90") / "results.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if request.param == "gpu-machine":
        if not (GPU_TRITON / "triton").is_dir():
            pytest.skip(f"the GPU machine's Triton is not installed in {GPU_TRITON}: run make install")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(GPU_TRITON), env.get("PYTHONPATH"))))
    proc = subprocess.run(
        [sys.executable, str(_HELPER), "--json", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode == compile_sm90.SKIP_EXIT:
        pytest.skip(f"cannot compile for sm_90 here: {proc.stdout.strip()}")
    if request.param == "gpu-machine":
        assert f"Triton {GPU_TRITON_VERSION}:" in proc.stdout, proc.stdout[-2000:]  # not the pinned one
    if not out.exists():
        pytest.fail(
            f"compile_sm90.py exited {proc.returncode} without results:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return {result["id"]: result for result in json.loads(out.read_text())}


@pytest.mark.parametrize("case", [compile_sm90.case_id(*case) for case in compile_sm90.CASES])
def test_compiles_for_sm90(compiled, case, record_property):
    result = compiled[case]
    for entry in result["compiled"]:
        if "n_regs" in entry:
            record_property(
                entry["config"], f"regs={entry['n_regs']} spills={entry['n_spills']} smem={entry['shared']}"
            )
    assert result["compiled"], f"{case}: nothing compiled:\n{result['error']}"
    assert result["ok"], f"{case}: a config the launcher can run does not compile, spills or does not fit:\n" + result[
        "error"
    ]
