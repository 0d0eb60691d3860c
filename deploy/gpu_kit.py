"""The GPU bundle: everything a GPU machine with no network needs to run the GPU suite (docs/gpu.md).

    on a machine with the package registries:   python3 deploy/gpu_kit.py fetch              (writes .kit/, ~34 MiB)
    on the GPU machine, in the repository:      python3 deploy/gpu_kit.py run --out DIR      (DIR/gpu-results.tgz)

Copy the repository with its ``.kit/`` to the GPU machine, which needs the NVIDIA driver and an image
with Python 3.12, torch (CUDA), CuPy and pytest. The bundle and the tracked tree are kept under 64 MiB
together, so that they travel as one upload.

``fetch`` packs two archives: the ``tritonserver`` binary with its libraries, backends and the one
python stub it needs (the rest of the nvidia-pytriton wheel is PyTriton's Python API, stubs for other
Pythons and a libpython only the 3.13 stub links), and the packages the image lacks (numpy 1.26 for
the stub, tritonclient, protobuf as new as tritonclient's generated code, Locust and its web stack).

The image's ``python3`` may itself be a venv (/opt/torch/.venv). A venv made from it with
``--system-site-packages`` sees the *base* interpreter's packages, not torch, so ``install`` makes a
plain venv, unpacks the kit into its site-packages and appends the image interpreter's
site-packages with a ``.pth`` file: the kit's numpy 1.26 comes first (the python stub corrupts
tensors under numpy 2), torch and transformers come from the image. The python stub finds this
venv through ``PATH`` (``model_repository/launcher.py``). Kernels and the ``gpu`` tests run with the
image's own python3 (numpy 2, which CuPy 14 needs); the served sweep runs in the venv.

``run`` installs, then runs ``python -m benchmarks gpu-suite`` three times (kernels, the served
sweep, the gpu tests: the headline figures first), each within what is left of ``--budget-s``, and
packs every result into ``DIR/gpu-results.tgz``. Standard library only: it runs before anything is
installed.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / ".kit"
PYTRITON = "nvidia-pytriton==0.7.0"
# What the GPU image lacks, pinned; protobuf as new as tritonclient's generated
# code (6.33.5) and ml_dtypes as old as tritonclient allows (newer ones may need numpy 2).
SITE = ["numpy==1.26.4", "tritonclient[grpc]==2.73.0", "protobuf==6.33.6", "ml-dtypes==0.5.4", "locust==2.47.0",
        "hdrhistogram==0.10.8"]
# Already in the image, at versions these accept: not carried.
IMAGE_HAS = {"grpcio", "requests", "urllib3", "certifi", "idna", "charset-normalizer", "packaging", "pytest", "pluggy",
             "iniconfig", "pygments", "setuptools", "werkzeug", "jinja2", "markupsafe", "click", "msgpack", "psutil", "h11",
             "typing-extensions", "wheel"}
PLATFORMS = ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_26_x86_64", "manylinux_2_27_x86_64", "manylinux_2_28_x86_64", "manylinux_2_31_x86_64",
             "manylinux_2_34_x86_64", "manylinux_2_35_x86_64"]
TRANSFER_MIB = 64  # the bundle and the tracked tree travel as one upload of at most this
MARGIN_MIB = 4  # what results and notes committed later may add to the tree
SITE_DROP = ["*/tests/*", "numpy/f2py/*", "numpy/distutils/*", "numpy/core/_simd.*", "*.pyi", "bin/*", "*/__pycache__/*"]


def log(msg: str) -> None:
    print(f"gpu-kit: {msg}", file=sys.stderr, flush=True)


def _target_args(python: str) -> list[str]:
    """pip's options for the GPU machine's interpreter and platforms, whatever this machine runs."""
    return ["--only-binary=:all:", "--python-version", python, "--implementation", "cp",
            *[a for p in PLATFORMS for a in ("--platform", p)]]


def _pip_download(dest: Path, python: str, requirements: list[str], deps: bool) -> list[Path]:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", *_target_args(python), "-d", str(dest), *requirements]
    subprocess.run(cmd + ([] if deps else ["--no-deps"]), check=True)
    return sorted(dest.glob("*.whl"))


def _unzip(wheel: Path, dest: Path) -> None:
    """ZipFile.extractall drops the permission bits: tritonserver and the stub must stay executable."""
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            path = Path(z.extract(info, dest))
            if (mode := info.external_attr >> 16 & 0o777) and not info.is_dir():
                path.chmod(mode)


def _project(wheel: Path) -> str:
    return wheel.name.split("-")[0].lower().replace("_", "-")


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mode = 0o755 if info.mode & 0o111 else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _tar_xz(out: Path, members: dict[str, Path], strip: bool = False) -> None:
    """``members``: archive name -> file, written in name order. ``strip``: ELF files lose their symbol
    tables (``strip --strip-unneeded``, on a copy, where ``strip`` exists): ml_dtypes and rapidjson ship with theirs (25 and 7 MB)."""
    strip_tool = shutil.which("strip") if strip else None
    with tempfile.TemporaryDirectory(prefix="gpu-kit-strip-") as tmp, tarfile.open(out, "w:xz", preset=9) as tar:
        for name in sorted(members):
            path = members[name]
            if strip_tool and path.read_bytes()[:4] == b"\x7fELF":
                copy = Path(tmp) / name.replace("/", "_")
                shutil.copy2(path, copy)
                subprocess.run([strip_tool, "--strip-unneeded", str(copy)], check=True)
                path = copy
            tar.add(path, arcname=name, recursive=False, filter=_normalised)


def trim_pytriton(tree: Path, python: str) -> dict[str, Path]:
    """The files of an unpacked nvidia-pytriton wheel that ``tritonserver`` and the ``python`` stub
    use: the binary, backends, caches, the stub for ``python``, the bundled libraries (a bundled
    libpython only if that stub names it), the wheel's metadata; and an ``__init__.py`` so that
    ``importlib.util.find_spec("pytriton")`` finds it (the launcher's way in)."""
    server = tree / "pytriton" / "tritonserver"
    stub = server / "python_backend_stubs" / python / "triton_python_backend_stub"
    if not stub.exists():
        raise FileNotFoundError(f"the wheel has no python stub for Python {python} ({stub})")
    stub_bytes = stub.read_bytes()
    keep: dict[str, Path] = {}
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        rel = path.relative_to(tree).as_posix()
        if rel.startswith(("pytriton/tritonserver/bin/", "pytriton/tritonserver/backends/", "pytriton/tritonserver/caches/",
                           f"pytriton/tritonserver/python_backend_stubs/{python}/")):
            keep[rel] = path
        elif rel.startswith("nvidia_pytriton.libs/"):
            if not path.name.startswith("libpython") or path.name.encode() in stub_bytes:
                keep[rel] = path
        elif fnmatch.fnmatch(rel, "nvidia_pytriton-*.dist-info/METADATA"):
            keep[rel] = path
    init = tree / "pytriton-kit-init.py"
    init.write_text('"""nvidia-pytriton 0.7.0, trimmed by deploy/gpu_kit.py: tritonserver, its libraries and one stub."""\n'
                    '__version__ = "0.7.0"\n', encoding="utf-8")
    keep["pytriton/__init__.py"] = init
    return keep


def site_members(target: Path) -> dict[str, Path]:
    """Every installed file but tests, type stubs, scripts (Locust runs as ``python -m locust``) and caches."""
    keep = {}
    for path in sorted(p for p in target.rglob("*") if p.is_file()):
        rel = path.relative_to(target).as_posix()
        if not any(fnmatch.fnmatch(rel, pattern) for pattern in SITE_DROP):
            keep[rel] = path
    return keep


def tracked_bytes() -> int:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return sum((ROOT / name).stat().st_size for name in out.decode().split("\0") if name and (ROOT / name).is_file())


def fetch(python: str, kit: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="gpu-kit-") as tmp:
        tmp = Path(tmp)
        (wheel,) = _pip_download(tmp / "pytriton", python, [PYTRITON], deps=False)
        _unzip(wheel, tmp / "pytriton-tree")
        wheels = [w for w in _pip_download(tmp / "site", python, SITE, deps=True) if _project(w) not in IMAGE_HAS]
        target = tmp / "site-tree"
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-compile",
                        *_target_args(python), "--target", str(target), *map(str, wheels)], check=True)
        shutil.rmtree(kit, ignore_errors=True)
        kit.mkdir(parents=True)
        log("packing tritonserver (xz -9: about a minute)")
        _tar_xz(kit / "pytriton.tar.xz", trim_pytriton(tmp / "pytriton-tree", python), strip=True)
        log("packing the packages the image lacks")
        _tar_xz(kit / "site.tar.xz", site_members(target), strip=True)
        info = {"python": python, "pytriton": PYTRITON, "site": SITE, "carried": sorted(w.name for w in wheels),
                "not_carried_image_has": sorted(IMAGE_HAS), "bytes": {p.name: p.stat().st_size for p in sorted(kit.glob("*.tar.xz"))}}
    (kit / "kit.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    kit_mib, tree_mib = sum(info["bytes"].values()) / 2**20, tracked_bytes() / 2**20
    info["transfer_mib"] = round(kit_mib + tree_mib, 1)
    log(f"kit {kit_mib:.1f} MiB + tracked tree {tree_mib:.1f} MiB = {kit_mib + tree_mib:.1f} MiB of the {TRANSFER_MIB} MiB upload")
    if kit_mib + tree_mib > TRANSFER_MIB - MARGIN_MIB:
        raise SystemExit(f"gpu-kit: the kit and the tree must stay under {TRANSFER_MIB - MARGIN_MIB} MiB to travel as one upload; "
                         f"got {kit_mib + tree_mib:.1f} MiB")
    return info


def _site_dirs(python: str) -> list[str]:
    code = "import json, site, sys; print(json.dumps([p for p in sys.path if p.rstrip('/').endswith(('site-packages', 'dist-packages'))]))"
    return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout)


def venv_site(venv: Path) -> Path:
    (site,) = (venv / "lib").glob("python3*/site-packages")
    return site


def install(kit: Path, venv: Path, image_python: str) -> dict:
    """A venv whose own site-packages hold the kit, then the image interpreter's (a .pth file)."""
    t0 = time.monotonic()
    info = json.loads((kit / "kit.json").read_text(encoding="utf-8"))
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([image_python, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = venv_site(venv)
    version = site.parent.name.removeprefix("python")
    if version != info["python"]:
        raise SystemExit(f"gpu-kit: the kit was fetched for Python {info['python']}; {image_python} is Python {version} "
                         f"(fetch again with --python {version})")
    for archive in ("site.tar.xz", "pytriton.tar.xz"):
        with tarfile.open(kit / archive) as tar:
            tar.extractall(site, filter="data") if sys.version_info >= (3, 12) else tar.extractall(site)  # noqa: S202 - our own archive
    image_sites = [p for p in _site_dirs(image_python) if Path(p).resolve() != site.resolve()]
    (site / "zz_image_site_packages.pth").write_text("".join(f"{p}\n" for p in image_sites), encoding="utf-8")
    python = str(venv / "bin" / "python")
    check = ("import importlib.util, json, numpy, tritonclient.grpc, locust, torch; spec = importlib.util.find_spec('pytriton'); "
             "print(json.dumps({'numpy': numpy.__version__, 'numpy_from': numpy.__file__, 'torch': torch.__version__, "
             "'locust': locust.__version__, 'pytriton': spec.submodule_search_locations[0]}))")
    r = subprocess.run([python, "-c", check], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"gpu-kit: the venv cannot import what the served sweep needs:\n{r.stderr[-3000:]}")
    result = {"venv": str(venv), "image_site_packages": image_sites, **json.loads(r.stdout.strip().splitlines()[-1])}
    if not result["numpy"].startswith("1."):
        raise SystemExit(f"gpu-kit: the venv's numpy must be the kit's 1.x (the python stub corrupts tensors under numpy 2); "
                         f"got {result['numpy']} from {result['numpy_from']}")
    result["stub_missing_libraries"] = missing_libraries(site, python)
    if result["stub_missing_libraries"]:
        log(f"WARNING: the python stub will not start: missing {result['stub_missing_libraries']}")
    result["seconds"] = round(time.monotonic() - t0, 1)
    log(f"installed in {result['seconds']} s: {json.dumps(result)}")
    return result


def missing_libraries(site: Path, python: str) -> list[str]:
    """What ``ldd`` cannot find for the stub, with the LD_LIBRARY_PATH the launcher gives the server
    (``server_env``: the kit's libraries and the interpreter's LIBDIR, where libpython3.X.so must be)."""
    if not shutil.which("ldd"):
        return ["(ldd not found: not checked)"]
    code = "from model_repository.launcher import server_env; print(server_env()['LD_LIBRARY_PATH'])"  # what the server gets
    library_path = subprocess.run([python, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    (stub,) = site.glob("pytriton/tritonserver/python_backend_stubs/*/triton_python_backend_stub")
    env = {**os.environ, "LD_LIBRARY_PATH": library_path}
    out = subprocess.run(["ldd", str(stub)], capture_output=True, text=True, env=env).stdout
    return [line.split()[0] for line in out.splitlines() if "not found" in line]


def run(kit: Path, out: Path, venv: Path, image_python: str, budget_s: float, dry_run: bool, work: Path) -> int:
    """Install, then kernels (image python), the served sweep (the venv), the gpu tests (image python),
    each within what is left of ``budget_s``; every result packed into ``out/gpu-results.tgz``."""
    start = time.monotonic()
    results = work / "results"
    shutil.rmtree(work, ignore_errors=True)
    results.mkdir(parents=True)
    record: dict = {"budget_s": budget_s, "dry_run": dry_run, "parts": {}}
    try:
        record["install"] = install(kit, venv, image_python)
    except (SystemExit, subprocess.CalledProcessError, OSError) as e:
        record["install"] = {"error": str(e)}
    venv_python = str(venv / "bin" / "python")
    parts = [("kernels", image_python, "env,kernels", 0.30), ("serving", venv_python, "env,serving", 0.80),
             ("tests", image_python, "tests", 1.0)]
    for name, python, steps, share in parts:
        left = budget_s - (time.monotonic() - start) - 20  # 20 s to pack and hand back
        deadline = min(left, share * budget_s - (time.monotonic() - start)) if share < 1 else left
        why = ("no time left" if deadline < 30 else "the kit did not install" if name == "serving" and "error" in record["install"]
               else f"the python stub cannot start: missing {record['install']['stub_missing_libraries']}"
               if name == "serving" and record["install"].get("stub_missing_libraries") else None)
        if why:  # the time goes to the parts that can run
            record["parts"][name] = {"skipped": why}
            log(f"{name}: skipped: {why}")
            continue
        cmd = [python, "-m", "benchmarks", "gpu-suite", "--steps", steps, "--out", str(results / name),
               "--workdir", str(work / "suite"), "--deadline-s", f"{deadline:.0f}", *(["--dry-run"] if dry_run else [])]
        log(f"{name}: {' '.join(cmd[1:])}")
        t0 = time.monotonic()
        with open(results / f"{name}.log", "wb") as f:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
            try:
                code = proc.wait(timeout=deadline + 15)
            except subprocess.TimeoutExpired:  # SIGTERM first: `python -m benchmarks` then stops the servers it started
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                code = "timeout"
        record["parts"][name] = {"exit": code, "seconds": round(time.monotonic() - t0, 1), "deadline_s": round(deadline)}
        log(f"{name}: exit {code} in {record['parts'][name]['seconds']} s")
    for server_log in sorted((work / "suite").glob("*/server/*.log")):  # Triton's own logs, for a failed start
        shutil.copy2(server_log, results / f"{server_log.parent.parent.name}-{server_log.name}")
    record["seconds"] = round(time.monotonic() - start, 1)
    (results / "run.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "gpu-results.tgz", "w:gz") as tar:
        tar.add(results, arcname="gpu-results")
    for name in ("kernels", "serving", "tests"):  # readable without unpacking
        if (results / name / "summary.md").exists():
            shutil.copy2(results / name / "summary.md", out / f"{name}-summary.md")
    print(json.dumps(record, indent=2))
    return 0 if all(isinstance(p.get("exit"), int) and p["exit"] == 0 for p in record["parts"].values()) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="deploy/gpu_kit.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="on a machine with the package registries: pack .kit/ for the GPU machine")
    f.add_argument("--python", default="3.12", help="the GPU image's Python")
    for name, text in (("install", "on the GPU machine: the venv for the served sweep"), ("run", "on the GPU machine: install, then the whole GPU suite")):
        q = sub.add_parser(name, help=text)
        q.add_argument("--venv", type=Path, default=Path("/tmp/sn-venv"))
        q.add_argument("--image-python", default="python3", help="the image's interpreter (torch, CuPy, numpy 2)")
        if name == "run":
            q.add_argument("--out", type=Path, default=Path("artifacts/gpu-run"))
            q.add_argument("--budget-s", type=float, default=480.0,
                           help="wall clock for everything; each part is cut to what is left of it")
            q.add_argument("--work", type=Path, default=Path("/tmp/sn-gpu"))
            q.add_argument("--dry-run", action="store_true", help="the CPU rehearsal: tiny sizes, measures nothing")
    for q in (f, *[sub.choices[n] for n in ("install", "run")]):
        q.add_argument("--kit", type=Path, default=KIT)
    args = p.parse_args(argv)
    if args.command == "fetch":
        fetch(args.python, args.kit)
        return 0
    if args.command == "install":
        install(args.kit, args.venv, args.image_python)
        return 0
    return run(args.kit, args.out, args.venv, args.image_python, args.budget_s, args.dry_run, args.work)


if __name__ == "__main__":
    sys.exit(main())
