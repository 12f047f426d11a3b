"""The task files that ship with forgetbench, installed as the package data of ``forgetbench.task_files``."""
