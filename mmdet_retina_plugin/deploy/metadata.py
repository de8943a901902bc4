"""The metadata an exported graph carries: its key, and reading and writing it.

Imports neither torch nor mmdet, so that :mod:`.runtime` runs where only numpy, onnxruntime and
OpenCV are installed; the ``onnx`` package is imported only to read or write a file with it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Union

#: Key of the JSON entry in the ONNX file's ``metadata_props`` (docs/deploy.md, "Metadata").
METADATA_KEY = 'mmdet_retina_plugin'


def metadata_from_props(props: Mapping[str, str], path: Union[str, Path]) -> Dict[str, Any]:
    """The exporter's metadata among a file's ``metadata_props``.

    Args:
        props (Mapping[str, str]): the file's metadata, key to value (e.g. ONNX Runtime's
            ``custom_metadata_map``).
        path (str | Path): the file, for the message.

    Raises:
        ValueError: the file has no such entry (not written by the exporter).
    """
    if METADATA_KEY not in props:
        raise ValueError(f'{path} has no {METADATA_KEY} metadata: not exported by '
                         'mmdet_retina_plugin.deploy.export_onnx')
    return json.loads(props[METADATA_KEY])


def read_metadata(path: Union[str, Path]) -> Dict[str, Any]:
    """The metadata :func:`~.export.export_onnx` stored in ``path`` (read with ``onnx``);
    ValueError if it has none."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return metadata_from_props({p.key: p.value for p in model.metadata_props}, path)


def write_metadata(path: Union[str, Path], meta: Dict[str, Any]) -> None:
    """Stores ``meta`` as JSON under :data:`METADATA_KEY` in the ONNX file ``path``."""
    import onnx

    model = onnx.load(str(path))
    entry = next((p for p in model.metadata_props if p.key == METADATA_KEY), None) or \
        model.metadata_props.add(key=METADATA_KEY)
    entry.value = json.dumps(meta)
    onnx.save(model, str(path))
