"""The reproduction ledger: each paper figure forgetbench targets, its task set, and published against measured.

``entries`` lists them (and their mini-world analogues), ``measures`` reads a target's quantity from result records,
``ledger`` pairs every published number with its measurement and renders the table, ``check`` lists what a real
entry is missing before anything runs, and ``costs`` estimates GPU time.
"""
