"""``import cola_fed`` works where torch cannot be imported (edge clients)."""

import subprocess
import sys
import textwrap
from pathlib import Path

# Makes `import torch` fail, as on an edge device without PyTorch (the finder wrapper that
# NodeProcess uses; importing it loads nothing but the bare cola_fed package).
NO_TORCH = textwrap.dedent(
    """
    import sys
    from cola_fed.federation.node_process import WithoutTorch

    sys.meta_path[:] = [WithoutTorch(finder) for finder in sys.meta_path]
    """
)


def test_package_imports_without_torch():
    code = NO_TORCH + textwrap.dedent(
        """
        import cola_fed
        from cola_fed import AdaptationData, AdapterSpec, Layout, OptimizerSpec
        from cola_fed.gl import LayerInfo

        spec = AdapterSpec(kind="mlp", hidden=8)
        OptimizerSpec(name="sgd", momentum=0.9)
        layout = Layout((LayerInfo("q", 4, 4),))
        assert Layout.from_dict(layout.to_dict()) == layout
        assert "torch" not in sys.modules
        try:
            cola_fed.ServerEngine
        except ImportError as err:
            assert "torch" in str(err)
        else:
            raise AssertionError("ServerEngine resolved without torch")
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_client_app_imports_without_torch():
    code = NO_TORCH + textwrap.dedent(
        """
        from cola_fed.apps import client_app
        import cola_fed.wire, cola_fed.federation.client, cola_fed.tasks.base
        import cola_fed.edge.ort_learner, cola_fed.edge.graphs
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False, cwd=str(Path(__file__).parents[1]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
