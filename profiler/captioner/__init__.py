"""The project's own captioning model, tiny-captioner: generated scenes, their captions, a parser
from captions back to scenes, training and evaluation. The trained model ships in
profiler/builtin/tiny-captioner/."""
