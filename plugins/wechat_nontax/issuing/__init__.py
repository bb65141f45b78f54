"""The issuing pipeline: the orders' PDFs, one batch, the authorisation links, the journal of
bills not yet recorded, the run's steps and its operators."""
