"""What tests/{integration,unit}/test_teacher_cache.py share: what more than one layer uses."""

CACHED = "generations.student.teacher_signal=cached"
LOSSES_TOP_K = "[{name: label_smoothing, weight: 0.5}, {name: soft_label, weight: 0.5, params: {top_k: 8}}]"
