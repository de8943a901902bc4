"""COCO data set that reports bad annotations instead of silently skipping them."""
import logging
import math
from typing import List, Union

from mmdet.datasets import CocoDataset
from mmdet.registry import DATASETS
from mmengine.logging import print_log


@DATASETS.register_module()
class RetinaCocoDataset(CocoDataset):
    """:class:`~mmdet.datasets.CocoDataset` with annotation checks at load time.

    mmdet's ``CocoDataset.parse_data_info`` silently skips boxes that are degenerate, lie
    outside the image or even contain NaN (``max(0, nan)`` is ``0`` in Python). This subclass
    checks every non-ignored annotation first:

    * a ``bbox`` with NaN/Inf (or not 4 numbers) raises :class:`ValueError` naming the image id
      and file, because such a value means a broken export, not a hard example;
    * a box with width or height ``<= 0`` or without overlap with the image is reported in one
      warning per image (image id, file name, boxes); mmdet then skips it as before.

    Images that end up without boxes are kept when ``filter_cfg=dict(filter_empty_gt=False)``
    and train as background-only samples. Arguments are those of ``CocoDataset``.
    """

    def parse_data_info(self, raw_data_info: dict) -> Union[dict, List[dict]]:
        img = raw_data_info['raw_img_info']
        name = f'img_id={img["img_id"]}, file_name={img["file_name"]}'
        dropped = []
        for ann in raw_data_info['raw_ann_info']:
            if ann.get('ignore', False):
                continue
            bbox = ann.get('bbox')
            if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
                    or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)):
                raise ValueError(f'Annotation id={ann.get("id")} has an invalid bbox {bbox!r} '
                                 f'(need 4 finite numbers x, y, w, h): {name}')
            x, y, w, h = bbox
            outside = x >= img['width'] or y >= img['height'] or x + w <= 0 or y + h <= 0
            if w <= 0 or h <= 0 or outside:
                dropped.append(bbox)
        if dropped:
            print_log(f'RetinaCocoDataset: skipping {len(dropped)} degenerate or out-of-image '
                      f'boxes (x, y, w, h) {dropped}: {name}', logger='current',
                      level=logging.WARNING)
        return super().parse_data_info(raw_data_info)
