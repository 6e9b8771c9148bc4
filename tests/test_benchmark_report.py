"""benchmarks/run.py's targets and report from a results dict: each target against torch as it
comes, with the ratio against torch with freed memory kept beside it when that was timed; and
benchmarks/summarize.py's table of saved runs against the targets."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import run as benchmark  # noqa: E402
import summarize  # noqa: E402


def _timing(total_ms):
    return benchmark._timing([total_ms / 2e3], [total_ms / 2e3], first_seconds=0.5)


def _steps(train_per_s):
    return {"train_images_per_s": train_per_s, "infer_images_per_s": 3 * train_per_s,
            "train_first_step_s": 1.0}


def _results(with_torch):
    layer = {"label": "ssc 576->576 8x8 s1", "kind": "ssc", "uses": ["sscresnet20 r=1: x"],
             "minissc": _timing(10.0), "reference": _timing(100.0)}
    networks = []
    for name, options in benchmark.NETWORK_MODELS:
        networks.append({"model": name, "options": options,
                         "label": benchmark.model_label(name, options), "minissc": _steps(150.0)})
    if with_torch:
        layer.update(torch=_timing(40.0), torch_kept=_timing(20.0), speedup_vs_torch=4.0,
                     speedup_vs_torch_kept=2.0)
        for network in networks:
            network.update(torch=_steps(15.0), torch_kept=_steps(50.0), train_speedup=10.0,
                           infer_speedup=10.0, train_speedup_vs_torch_kept=3.0,
                           infer_speedup_vs_torch_kept=3.0)
    meta = dict(threads=2, date="today", cpu="cpu", cores=2, ram_gib=1, python="3", numpy="2",
                numba="0", numba_threading_layer="omp", torch="2" if with_torch else None,
                minissc="0", git_commit="abc", git_dirty=False, load_average_at_start=[0.1])
    return {"meta": meta, "config": dict(benchmark.MODES["quick"], mode="quick", batch=128),
            "notes": [], "layers": [layer], "networks": networks}


def test_targets_judge_torch_as_it_comes_and_show_the_kept_ratio_beside():
    targets = {t["target"]: t for t in benchmark.evaluate_targets(_results(with_torch=True))}
    layer = targets["SSC layer fwd+bwd vs torch, every sscresnet20 shape (worst)"]
    assert (layer["value"], layer["status"]) == (4.0, "MISS")
    assert "vs torch with freed memory kept, worst 2.00x" in layer["detail"]
    network = targets["sscresnet20 r=1 training vs torch"]
    assert (network["value"], network["status"]) == (10.0, "PASS")
    assert network["detail"] == "vs torch with freed memory kept: 3.00x"


def test_report_shows_the_kept_columns():
    results = _results(with_torch=True)
    results["targets"] = benchmark.evaluate_targets(results)
    report = benchmark.format_report(results)
    layer_row = next(line for line in report.splitlines() if line.startswith("ssc 576->576"))
    assert layer_row.split()[-2:] == ["20.0", "2.00x"]
    network_row = next(line for line in report.splitlines() if line.startswith("resnet20"))
    assert "50.0" in network_row.split() and "3.00x" in network_row.split()


def test_without_torch_the_ratio_targets_are_not_applicable():
    results = _results(with_torch=False)
    results["targets"] = benchmark.evaluate_targets(results)
    statuses = {t["target"]: t["status"] for t in results["targets"]}
    assert statuses["sscresnet20 r=1 training vs torch"] == "n/a"
    assert statuses["sscresnet20 r=1 training images/s"] == "MISS"
    assert "ssc 576->576 8x8 s1" in benchmark.format_report(results)


def test_report_shows_the_machine_speed_probes_when_the_run_has_them():
    results = _results(with_torch=True)
    assert "machine speed" not in benchmark.format_report(results)  # runs before the probe
    results["meta"].update(speed_at_start={"copy_gb_per_s": 12.5, "matmul_gflop_per_s": 149.0},
                           speed_at_end={"copy_gb_per_s": 11.0, "matmul_gflop_per_s": 120.0})
    line = next(line for line in benchmark.format_report(results).splitlines()
                if line.startswith("machine speed"))
    assert line.endswith("at start copy 12.5 GB/s, 1-thread matmul 149.0 GFLOP/s; at end copy "
                         "11.0 GB/s, 1-thread matmul 120.0 GFLOP/s")


def test_machine_speed_measures_both_probes():
    speed = benchmark.machine_speed(repeats=1)
    assert set(speed) == {"copy_gb_per_s", "matmul_gflop_per_s"}
    assert all(0 < value < float("inf") for value in speed.values())


def test_busy_note_warns_on_cpus_busy_now_not_on_a_lagging_load_average():
    assert benchmark.busy_note(0.1, 0.01) is None
    busy_now = benchmark.busy_note(0.1, 0.6)
    assert busy_now.startswith("WARNING: the machine is busy") and "60% busy" in busy_now
    just_ended = benchmark.busy_note(0.9, 0.02)
    assert not just_ended.startswith("WARNING") and "load average 0.90" in just_ended
    assert benchmark.busy_note(0.9, None).startswith("WARNING")  # no /proc/stat: the load
    assert benchmark.busy_note(0.2, None) is None


def test_cpu_busy_share_is_a_share_or_none():
    share = benchmark.cpu_busy_share(0.05)
    assert share is None or 0.0 <= share <= 1.0


def test_time_steps_counts_the_cpu_seconds_of_the_timed_training_steps_only(monkeypatch):
    cpu_clock = [0.0]  # the process's CPU seconds, advanced by the steps alone
    monkeypatch.setattr(benchmark.time, "process_time", lambda: cpu_clock[0])

    def step(cpu_seconds):
        return lambda: cpu_clock.__setitem__(0, cpu_clock[0] + cpu_seconds)

    timing = benchmark.time_steps(step(1.0), step(10.0), 128, dict(train_steps=3, infer_steps=2))
    assert timing["train_process_cpu_s"] == 3.0  # not the first (warm-up) step, no inference
    if "train_all_ticks" in timing:  # Linux
        assert 0 <= timing["train_steal_ticks"] <= timing["train_all_ticks"]


def test_cpu_use_sums_the_rounds_and_is_empty_for_older_runs():
    rounds = [{"train_step_s": [1.0, 1.0], "train_first_step_s": 3.0, "infer_step_s": [0.5],
               "infer_first_step_s": 1.0, "train_process_cpu_s": cpu, "train_steal_ticks": steal,
               "train_all_ticks": 400} for cpu, steal in ((3.0, 0), (4.0, 80))]
    merged = benchmark.merge_step_rounds(rounds, 128)
    assert benchmark.cpu_use(merged) == {"cores": 7.0 / 4.0, "steal": 80 / 800}
    assert benchmark.cpu_use(_steps(150.0)) == {}


def test_report_shows_cpu_use_when_the_run_recorded_it():
    results = _results(with_torch=True)
    assert "CPU use" not in benchmark.format_report(results)  # runs before 2026-12-03d
    for network in results["networks"]:
        network["minissc"].update(train_step_s=[1.0, 0.5, 2.0], train_process_cpu_s=6.3,
                                  train_steal_ticks=3, train_all_ticks=700,
                                  train_step_steal=[0.0, 0.01, 0.3])
    lines = benchmark.format_report(results).splitlines()
    header = lines.index(next(line for line in lines if line.startswith("CPU use")))
    assert lines[header + 1].split() == ["model", "minissc", "cores", "steal", "quiet"]
    # quiet: the steps of 1.0 and 0.5 s, median 0.75 s, 128 / 0.75 images/s
    assert lines[header + 2].split() == ["resnet20", "1.80", "0.4%", "170.7", "(2/3)"]


def test_time_steps_records_each_timed_training_steps_steal(monkeypatch):
    ticks = [(0, 0, 0)]  # (busy, total, steal) clock ticks, 100 a step, steal as given

    def step(steal):
        def run():
            busy, total, stolen = ticks[0]
            ticks[0] = (busy + 100, total + 100, stolen + steal)
        return run

    steals = iter([50, 0, 20, 3])  # the first step (warm-up) has 50
    monkeypatch.setattr(benchmark, "cpu_ticks", lambda: ticks[0])
    timing = benchmark.time_steps(lambda: step(next(steals))(), lambda: None, 128,
                                  dict(train_steps=3, infer_steps=1))
    assert timing["train_step_steal"] == [0.0, 0.2, 0.03]
    assert (timing["train_steal_ticks"], timing["train_all_ticks"]) == (23, 300)
    merged = benchmark.merge_step_rounds([timing, timing], 128)
    assert merged["train_step_steal"] == [0.0, 0.2, 0.03] * 2
    rate, quiet, steps = benchmark.quiet_rate(merged, 128)
    assert (quiet, steps) == (4, 6)
    assert benchmark.quiet_rate(_steps(150.0), 128) is None  # runs before 2026-12-03d


def test_targets_give_the_ratio_over_the_steps_the_host_left_alone():
    results = _results(with_torch=True)
    r1 = next(n for n in results["networks"] if n["label"] == "sscresnet20 r=1")
    r1["minissc"].update(train_step_s=[0.64, 0.5, 1.0], train_step_steal=[0.0, 0.0, 0.3])
    r1["torch"].update(train_step_s=[8.0, 9.0, 6.4], train_step_steal=[0.2, 0.3, 0.01])
    targets = {t["target"]: t for t in benchmark.evaluate_targets(results)}
    assert targets["sscresnet20 r=1 training vs torch"]["detail"] == (
        "vs torch with freed memory kept: 3.00x; over the steps with at most 5% steal: "
        "11.23x (2 and 1 of 3 and 3 steps)")  # 6.4 / 0.57
    assert targets["sscresnet20 r=1 training images/s"]["detail"] == (
        "over the steps with at most 5% steal: 224.6 (2/3)")
    r1["torch"]["train_step_steal"] = [0.2, 0.3, 0.4]
    targets = {t["target"]: t for t in benchmark.evaluate_targets(results)}
    assert targets["sscresnet20 r=1 training vs torch"]["detail"].endswith(
        "steal: n/a (2 and 0 of 3 and 3 steps)")


def test_report_warns_when_the_host_took_the_vms_cpus_during_the_steps():
    results = _results(with_torch=True)
    for network in results["networks"]:
        for side in ("minissc", "torch"):
            network[side].update(train_step_s=[1.0], train_process_cpu_s=1.8,
                                 train_steal_ticks=4, train_all_ticks=200)
    assert "WARNING: the VM's host" not in benchmark.format_report(results)  # 2% steal
    results["networks"][2]["torch"]["train_steal_ticks"] = 60
    warning = next(line for line in benchmark.format_report(results).splitlines()
                   if line.startswith("WARNING: the VM's host"))
    assert "took 30% of its CPU time while torch timed shiftresnet20 e=9" in warning


def test_report_gives_each_sections_steal_when_recorded():
    results = _results(with_torch=True)
    results["meta"]["section_seconds"] = {"layers": 600.0, "networks": 880.0}
    assert "section times: layers 600 s, networks 880 s;" in benchmark.format_report(results)
    results["meta"]["section_steal"] = {"layers": 0.012, "networks": 0.25}
    assert ("section times: layers 600 s (steal 1.2%), networks 880 s (steal 25.0%);"
            in benchmark.format_report(results))


def test_report_header_shows_how_busy_the_cpus_were_when_measured():
    results = _results(with_torch=False)
    results["targets"] = benchmark.evaluate_targets(results)
    assert "busy over the second before" not in benchmark.format_report(results)
    results["meta"]["cpu_busy_at_start"] = 0.02
    assert "load average at start 0.10, CPUs 2% busy over the second before" in \
        benchmark.format_report(results)


def test_report_header_names_the_cpu_llvm_compiled_for(monkeypatch):
    results = _results(with_torch=False)
    results["targets"] = benchmark.evaluate_targets(results)
    assert "Numba 0 (omp), torch absent" in benchmark.format_report(results)  # older runs
    results["meta"]["llvm_cpu"] = "rocketlake"
    assert "Numba 0 (omp, LLVM cpu rocketlake), torch absent" in benchmark.format_report(results)
    monkeypatch.setenv("NUMBA_CPU_NAME", "sapphirerapids")
    assert benchmark._llvm_cpu() == "sapphirerapids"
    monkeypatch.delenv("NUMBA_CPU_NAME")
    assert benchmark._llvm_cpu()  # the host's name, whatever this machine is


def test_summary_has_a_row_per_run_with_its_misses_in_bold(tmp_path):
    runs = []
    for name, torch_rate in (("full-a", 15.0), ("full-b", 30.0)):
        results = _results(with_torch=True)
        r1 = next(n for n in results["networks"] if n["label"] == "sscresnet20 r=1")
        r1["torch"]["train_images_per_s"] = torch_rate
        if name == "full-b":  # recorded steal (runs since 2026-12-03d)
            for side, steal in (("minissc", 4), ("torch", 30)):
                r1[side].update(train_step_s=[1.0], train_process_cpu_s=1.8,
                                train_steal_ticks=steal, train_all_ticks=200)
        results["meta"]["speed_at_start"] = {"copy_gb_per_s": 12.34, "matmul_gflop_per_s": 98.7}
        results["targets"] = benchmark.evaluate_targets(results)
        runs.append(tmp_path / f"{name}.json")
        runs[-1].write_text(json.dumps(results))
    lines = summarize.table(runs).splitlines()
    assert lines[0].startswith("| run | commit | CPU | probes at start | torch r=1 img/s | "
                               "r=1 steal (minissc, torch) | SSC layer, worst shape >= 5x | "
                               "r=1 vs torch >= 10x |")
    assert "| r=1 training >= 200 img/s |" in lines[0] and lines[0].endswith("| missed |")
    cells = [cell.strip() for cell in lines[2].split("|")[1:-1]]
    assert cells[:6] == ["a", "abc", "cpu", "12.3 GB/s, 99 GFLOP/s", "15.0", "-"]
    assert cells[6:] == ["**4.00x**", "10.00x", "10.00x", "10.00x", "**150.0**", "n/a", "n/a",
                         "2"]
    assert [cell.strip() for cell in lines[3].split("|")[5:7]] == ["30.0", "2%, 15%"]


def test_summary_refuses_runs_with_different_targets(tmp_path):
    paths = []
    for name, drop in (("full-a", False), ("full-b", True)):
        results = _results(with_torch=True)
        results["targets"] = benchmark.evaluate_targets(results)[:-1 if drop else None]
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(results))
    with pytest.raises(SystemExit, match="full-a.json: its targets differ"):
        summarize.table(paths)


def test_across_runs_gives_medians_and_ranges_of_one_cpus_runs(tmp_path):
    paths = []
    for name, cpu, rate in (("full-a", "Intel Xeon", 100.0), ("full-b", "Intel Xeon", 200.0),
                            ("full-c", "Intel Xeon", 120.0), ("full-d", "AMD EPYC", 999.0)):
        results = _results(with_torch=True)
        results["meta"]["cpu"] = cpu
        network = next(n for n in results["networks"] if n["label"] == "sscresnet20 r=1")
        network["minissc"]["train_images_per_s"] = rate
        network["train_speedup"] = rate / 15.0
        results["targets"] = benchmark.evaluate_targets(results)
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(results))
    text = summarize.across_runs(paths, "Intel")
    assert text.startswith("3 runs on Intel:")  # the AMD run is left out
    row = next(line for line in text.splitlines() if line.startswith("| sscresnet20 r=1 |"))
    assert row == "| sscresnet20 r=1 | 120 (100-200) | 15 (15-15) | 8x (6.67-13.3x) | 50 (50-50) " \
                  "| 3x (3-3x) |"
    assert "| ssc 576->576 8x8 s1 | 4x (4-4x) | 2x (2-2x) |" in text
    assert "| r=1 training >= 200 img/s | 1 of 3 |" in text  # run b's 200.0
    with pytest.raises(SystemExit, match="no benchmark results with targets on a CPU named"):
        summarize.across_runs(paths, "Arm")


def test_issue_machine_scales_minisscs_r1_rate_by_pytorchs_dense_rates(tmp_path, capsys):
    paths = []
    for name, r1_rate, with_torch in (("full-a", 127.5, True), ("full-b", 60.0, True),
                                      ("full-c", 999.0, False)):
        results = _results(with_torch=with_torch)
        networks = {n["label"]: n for n in results["networks"]}
        networks["sscresnet20 r=1"]["minissc"]["train_images_per_s"] = r1_rate
        if with_torch:  # PyTorch here at half the issue's resnet20 rate, 0.55 of its e=3 rate
            networks["resnet20"]["torch"]["train_images_per_s"] = 290.0
            networks["shiftresnet20 e=3"]["torch"]["train_images_per_s"] = 121.0
            networks["sscresnet20 r=1"]["torch"]["train_images_per_s"] = 19.0
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(results))
    lines = summarize.issue_machine(paths).splitlines()
    assert len([line for line in lines if line.startswith("| a ") or line.startswith("| b ")]) == 2
    assert not any(line.startswith("| c ") for line in lines)  # no PyTorch rates to scale by
    cells = [cell.strip() for cell in lines[2].split("|")[1:-1]]
    # 127.5 / 290 * 580 = 255; 127.5 / 121 * 220 = 231.8; the lower over the issue's 19: 12.2x
    assert cells == ["a", "cpu", "290.0 (0.50)", "121.0 (0.55)", "19.0 (1.00)", "127.5", "255",
                     "232", "12.2x"]
    assert lines[-1].startswith("2 runs; ") and "by PyTorch's resnet20 188 (120-255)" in lines[-1]
    assert summarize.main([str(path) for path in paths] + ["--issue-machine"]) == 0
    assert "| a | cpu |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no benchmark results with PyTorch's rates"):
        summarize.issue_machine(paths[2:])
