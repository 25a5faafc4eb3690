"""mmengine keeps process-wide registries of named instances (visualizers, loggers, message hubs). A Runner
built by one test would otherwise leak into the next: a plain ``Visualizer`` left by the classification run
where a detection test needs mmdet's ``DetLocalVisualizer``, or a logger of the same timestamped name still
writing into the previous test's work dir."""
import pytest


@pytest.fixture(autouse=True)
def fresh_mmengine_instances():
    yield
    logging = pytest.importorskip("mmengine.logging")
    visualization = pytest.importorskip("mmengine.visualization")
    classes = [visualization.Visualizer, logging.MMLogger, logging.MessageHub]
    while classes:
        cls = classes.pop()
        cls._instance_dict.clear()
        classes.extend(cls.__subclasses__())
