"""Registers the detection task (:class:`lowbit.detection.task.DetectTask`) as ``"detect"``."""

from lowbit.detection.task import register_detect_task

register_detect_task()
