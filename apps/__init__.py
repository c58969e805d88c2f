"""User entry points: the ``unimae`` command line (:mod:`unimae.apps.cli`) and the pretraining runner
(:mod:`unimae.apps.pretrain`). The Gradio app and the shared predict layer arrive in later issues.

Dependencies point one way: ``apps -> domains -> core``.
"""
