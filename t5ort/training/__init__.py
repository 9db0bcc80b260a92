"""Training scripts and data generators of the project's own trained models (torch and transformers allowed).

- :mod:`t5ort.training.numbers`, :mod:`t5ort.training.train_numbers`: the bundled
  English -> German number-words model (``t5ort/assets/numbers``);
- :mod:`t5ort.training.spelling`, :mod:`t5ort.training.train_spelling`: the
  number-words spelling corrector and its small draft model, whose output mostly
  copies the input (``t5ort/assets/spelling``; speculative decoding pays there).
"""
