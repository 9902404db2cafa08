"""The judge's tooling, beside it: the labelled judge-validation set (its builder and its
figures), the real-negative pool, and the training of the offline grader's classifiers. The
judge (`esr_eval.judge`) never imports it."""
