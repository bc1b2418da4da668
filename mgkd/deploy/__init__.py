"""A distilled model leaves mgkd: translate and predict from the command line, MLflow pyfunc models, export.

Layer: imported by cli (and by the controller to log a generation's MLflow model); imports models, tasks,
generations.checkpoint and lineage.tracking, never orchestration or cli.
"""
