"""The protocols that ship with forgetbench, one module each: ``finetune``, ``absent`` and ``sequence``.

The Protocol API and the registry are in ``forgetbench.protocol``; these modules are imported on first use.
"""
