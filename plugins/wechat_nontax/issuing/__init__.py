"""The issuing pipeline: orders and their bills, validation, PDFs, one batch, the journal of bills
not yet recorded, the run's steps and its operators."""
