"""syncd: keep a Clarifai application's inputs in step with an image-dataset folder."""

__version__ = "0.1.0"
