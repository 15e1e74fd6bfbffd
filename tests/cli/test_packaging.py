"""The package and its command line: pyproject.toml lists every package, the configs are found by
``d2_anchorfree.model_zoo`` (from the checkout and from an installed wheel, without torch), the
``d2af`` command and each subcommand answer ``--help``, ``d2af train`` / ``evaluate`` /
``predict`` run end to end on the bundled tree data, and the torch-free runtime imports where
torch and detectron2 cannot."""
import glob
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

from d2_anchorfree import __version__, model_zoo
from d2_anchorfree.cli import main as cli_main

from conftest import REPO, trees_dir

BLOCK_TORCH = "import sys; [sys.modules.__setitem__(m, None) for m in ('torch', 'torchvision', 'detectron2')]; "


def _pyproject():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def _env():
    """The environment of a subprocess that imports this checkout's d2_anchorfree."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, *filter(None, [os.environ.get("PYTHONPATH")])])}


def _d2af(*args, cwd=REPO):
    """``d2af ARGS`` (``python -m d2_anchorfree.cli``: the console script's function) in a subprocess."""
    return subprocess.run([sys.executable, "-m", "d2_anchorfree.cli", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True)


# ----------------------------------------------------------------------------------------------
# pyproject.toml


def test_pyproject_lists_every_package_and_ships_the_configs():
    config = _pyproject()["tool"]["setuptools"]
    packages = {os.path.relpath(os.path.dirname(p), REPO).replace(os.sep, ".")
                for p in glob.glob(os.path.join(REPO, "d2_anchorfree", "**", "__init__.py"), recursive=True)}
    config_folders = {"d2_anchorfree." + os.path.relpath(folder, REPO).replace(os.sep, ".")
                      for folder, _, _ in os.walk(os.path.join(REPO, "configs")) if "__pycache__" not in folder}
    assert set(config["packages"]) == packages | config_folders, "update [tool.setuptools] packages"
    assert config["package-dir"] == {"d2_anchorfree.configs": "configs"}
    assert config["package-data"]["d2_anchorfree.configs"] == ["**/*.yaml"]


def test_pyproject_version_dependencies_and_entry_point():
    project = _pyproject()["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    assert _pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "d2_anchorfree.__version__"}
    names = {dep.split(">")[0].split("=")[0].split("<")[0].strip().lower() for dep in project["dependencies"]}
    assert {"torch", "torchvision", "fvcore", "pycocotools", "scipy", "numpy", "opencv-python-headless"} <= names
    assert not names & {"pytest", "detectron2"}
    assert set(project["optional-dependencies"]) >= {"export", "wbf", "dev"}
    module, function = project["scripts"]["d2af"].split(":")
    assert (module, function) == ("d2_anchorfree.cli.main", "main") and callable(cli_main.main)


def test_no_sys_path_edits_left_in_tools():
    for path in glob.glob(os.path.join(REPO, "tools", "*.py")) + [os.path.join(REPO, "train_net.py")]:
        assert "sys.path.insert" not in open(path).read(), path


# ----------------------------------------------------------------------------------------------
# model_zoo


def test_get_config_file_returns_existing_files():
    path = model_zoo.get_config_file("FCOS/FCOS_R_50_FPN_1x.yaml")
    assert os.path.isabs(path) and os.path.isfile(path)
    assert os.path.samefile(path, os.path.join(REPO, "configs", "FCOS", "FCOS_R_50_FPN_1x.yaml"))
    listed = model_zoo.list_configs()
    assert len(listed) == len(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))
    assert "zoo/mmdet/gfl_r50_fpn_1x_coco.yaml" in listed
    for name in listed:
        assert os.path.isfile(model_zoo.get_config_file(name)), name


def test_get_config_file_refuses_missing_and_outside_paths():
    with pytest.raises(FileNotFoundError, match=r"'FCOS/FCOS_R_50_FPN_9x.yaml' not found.*FCOS/FCOS_R_50_FPN_1x.yaml"):
        model_zoo.get_config_file("FCOS/FCOS_R_50_FPN_9x.yaml")
    with pytest.raises(FileNotFoundError, match=r"'NoSuch/x.yaml' not found in .*; nearby configs: "):
        model_zoo.get_config_file("NoSuch/x.yaml")
    for bad in ("", "../pyproject.toml", "/etc/passwd"):
        with pytest.raises(ValueError, match="relative to configs/"):
            model_zoo.get_config_file(bad)


def test_get_config_merges_with_the_anchorfree_keys():
    cfg = model_zoo.get_config("ATSS/ATSS_tiny_R_18_cpu.yaml")
    assert cfg.MODEL.META_ARCHITECTURE == "ATSS" and cfg.MODEL.DENSE.NUM_CLASSES == 1  # _BASE_ merged


def test_runtime_and_model_zoo_import_without_torch():
    code = BLOCK_TORCH + (
        "import d2_anchorfree, d2_anchorfree.runtime.predict_onnx as rt; from d2_anchorfree import model_zoo\n"
        "assert 'torch' not in [m for m, v in sys.modules.items() if v is not None]\n"
        "print(model_zoo.get_config_file('FCOS/FCOS_R_50_FPN_1x.yaml'))\n"
        "try:\n    d2_anchorfree.add_anchorfree_config\nexcept ImportError as e:\n    print('ImportError:', e)\n")
    run = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    path, error = run.stdout.splitlines()
    assert os.path.isfile(path)
    assert "needs torch and detectron2" in error


def test_onnx_runtime_script_runs_without_torch():
    """tools/predict_onnx.py (a wrapper of d2_anchorfree.runtime.predict_onnx) where torch and
    detectron2 cannot be imported: its usage prints, exit code 0."""
    code = BLOCK_TORCH + (f"import runpy; sys.argv = ['predict_onnx.py', '--help']; "
                          f"runpy.run_path({os.path.join(REPO, 'tools', 'predict_onnx.py')!r}, run_name='__main__')")
    run = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True)
    assert run.returncode == 0 and "--model MODEL" in run.stdout, run.stderr[-3000:]


# ----------------------------------------------------------------------------------------------
# the command line


def test_d2af_help_lists_the_commands():
    run = _d2af("--help")
    assert run.returncode == 0, run.stderr[-3000:]
    for name in cli_main.COMMANDS:
        assert f"\n  {name} " in run.stdout, name
    assert _d2af("--version").stdout.strip() == f"d2_anchorfree {__version__}"
    unknown = _d2af("trian")
    assert unknown.returncode == 2 and "unknown command 'trian'" in unknown.stderr


@pytest.mark.parametrize("argv", [[name] for name in cli_main.COMMANDS]
                         + [["benchmark", suite] for suite in ("export", "slicing", "cocoeval", "raster", "train_loop")])
def test_each_subcommand_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main([*argv, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: d2af {' '.join(argv)} " in capsys.readouterr().out


def test_benchmark_suite_is_the_first_argument_or_detectors():
    from d2_anchorfree.cli import benchmark

    assert benchmark.split_suite(["export", "--quick"]) == ("export", ["--quick"])
    assert benchmark.split_suite(["--quick"]) == ("detectors", ["--quick"])
    assert benchmark.split_suite([]) == ("detectors", [])
    with pytest.raises(ValueError, match="unknown benchmark 'speed'; the benchmarks are: detectors, export"):
        benchmark.import_suite("speed")


def _trees_opts(trees, out_dir):
    """Config overrides: the bundled tree tiles under names of this run, small images, 2 iterations."""
    tag = os.path.basename(str(out_dir))
    return [
        "DATASETS.REGISTER_COCO",
        f"('pkg_train_{tag},{trees}/train.json,{trees}/images', 'pkg_val_{tag},{trees}/val.json,{trees}/images')",
        "DATASETS.TRAIN", f"('pkg_train_{tag}',)", "DATASETS.TEST", f"('pkg_val_{tag}',)",
        "INPUT.MIN_SIZE_TRAIN", "(160,)", "INPUT.MAX_SIZE_TRAIN", "200", "INPUT.MIN_SIZE_TEST", "160",
        "INPUT.MAX_SIZE_TEST", "200", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2",
        "SOLVER.WARMUP_ITERS", "1", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(out_dir),
    ]


@pytest.mark.slow  # trains 2 iterations, evaluates and predicts in three d2af processes
def test_d2af_train_then_evaluate_and_predict(tmp_path):
    trees, out = trees_dir(), tmp_path / "run"
    config = ["--config-file", os.path.join(REPO, "configs", "FCOS", "FCOS_tiny_R_18_cpu.yaml")]
    train = _d2af("train", *config, *_trees_opts(trees, out), cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    assert (out / "model_final.pth").is_file()
    weights = ["MODEL.WEIGHTS", str(out / "model_final.pth")]
    ev = _d2af("evaluate", *config, *_trees_opts(trees, tmp_path / "eval"), *weights, cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert "copypaste: AP,AP50,AP75" in ev.stdout + ev.stderr  # COCO evaluation ran (AP is nan or ~0 at 2 iterations)
    assert not (tmp_path / "eval" / "model_final.pth").exists()  # evaluated, not trained
    images = sorted(glob.glob(os.path.join(trees, "images", "*.png")))[:2]
    pred = _d2af("predict", *config, "--input", images[0], "--output", str(tmp_path / "pred"), "--min-score", "0",
                 "DATASETS.REGISTER_COCO", "()", "DATASETS.TEST", "()", "INPUT.MIN_SIZE_TEST", "160",
                 "INPUT.MAX_SIZE_TEST", "200", *weights, cwd=tmp_path)
    assert pred.returncode == 0, pred.stderr[-3000:]
    assert isinstance(json.load(open(tmp_path / "pred" / "results.json")), list)
    assert (tmp_path / "pred" / (os.path.basename(images[0]) + ".jpg")).is_file()


# ----------------------------------------------------------------------------------------------
# the wheel


@pytest.mark.slow
def test_wheel_ships_the_configs_and_model_zoo_works_installed(tmp_path):
    pytest.importorskip("build", reason="python -m build is needed (requirements-extra.txt)")
    # A copy of what the build reads, so that the build's scratch files stay out of the checkout.
    src = tmp_path / "src"
    for name in ("d2_anchorfree", "configs"):
        shutil.copytree(os.path.join(REPO, name), src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), src / name)
    build = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
                            str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = glob.glob(str(tmp_path / "dist" / f"d2_anchorfree-{__version__}-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {"d2_anchorfree/configs/" + name for name in model_zoo.list_configs()}
    assert configs <= names, sorted(configs - names)[:5]
    assert "d2_anchorfree/model_zoo.py" in names and "d2_anchorfree/runtime/predict_onnx.py" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "tools/"))]

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # without PYTHONPATH: a checkout on it (with its egg-info) would make pip skip the wheel as installed
    clean_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                              wheel], capture_output=True, text=True, env=clean_env)
    assert install.returncode == 0, install.stderr[-3000:]
    code = ("import sys, d2_anchorfree; from d2_anchorfree import model_zoo\n"
            "assert 'torch' not in sys.modules\n"
            "print(model_zoo.get_config_file('FCOS/FCOS_R_50_FPN_1x.yaml'))\n"
            "print(model_zoo.get_config_file('zoo/mmdet/gfl_r50_fpn_1x_coco.yaml'))\n")
    run = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=str(tmp_path), capture_output=True,
                         text=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert run.returncode == 0, run.stderr[-3000:]
    for path in run.stdout.split():
        assert path.startswith(str(venv)) and os.path.isfile(path), path
    assert os.path.isfile(os.path.join(os.path.dirname(run.stdout.split()[0]), "Base-FCOS.yaml"))  # its _BASE_
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cli = subprocess.run([str(venv / "bin" / "d2af"), "--help"], capture_output=True, text=True, env=env)
    assert cli.returncode == 0 and "prepare-data" in cli.stdout, cli.stderr[-3000:]
    bench = subprocess.run([str(venv / "bin" / "d2af"), "benchmark", "--quick"], capture_output=True, text=True,
                           env=env, cwd=str(tmp_path))
    assert bench.returncode == 2 and "not installed with the package" in bench.stderr, bench.stderr[-3000:]
