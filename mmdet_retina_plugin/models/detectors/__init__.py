from .retina_sliced_detector import RetinaSlicedDetector

__all__ = ['RetinaSlicedDetector']
