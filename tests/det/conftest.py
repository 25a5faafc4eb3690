"""mmengine keeps process-wide registries of named instances (visualizers, message hubs); a Runner built
by one test would otherwise be what the next test's hooks find (e.g. a plain ``Visualizer`` left by the
classification run, where a detection test needs mmdet's ``DetLocalVisualizer``)."""
import pytest


@pytest.fixture(autouse=True)
def fresh_visualizers():
    yield
    visualization = pytest.importorskip("mmengine.visualization")
    classes = [visualization.Visualizer]
    while classes:
        cls = classes.pop()
        cls._instance_dict.clear()
        classes.extend(cls.__subclasses__())
