"""mgkd: multi-generation knowledge distillation.

Generation 0 is a teacher; every trained student becomes the next generation's
teacher. Ray runs the generations, MLflow records the lineage, loss plugins
decide what each student learns from its teacher. See DESIGN.md.
"""

__version__ = "0.1.0"
