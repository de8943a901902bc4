from .retina_data_preprocessor import RetinaDataPreprocessor

__all__ = ['RetinaDataPreprocessor']
