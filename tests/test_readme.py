"""The README's Python tour runs as printed, and says what it computes."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_readme_tour_runs_and_its_parameter_count_is_right():
    text = README.read_text()
    [tour] = python_blocks(text)
    namespace = {}
    exec(compile(tour, str(README), "exec"), namespace)  # its asserts check the SSC layer
    assert namespace["x"].grad is not None and namespace["w"].grad is not None
    stated = re.search(r"# ([\d,]+) parameters", tour).group(1)
    assert namespace["model"].num_parameters() == int(stated.replace(",", ""))
