from .bucket_pad import RetinaBucketPad
from .retina_data_preprocessor import RetinaDataPreprocessor

__all__ = ['RetinaBucketPad', 'RetinaDataPreprocessor']
