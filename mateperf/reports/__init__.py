"""One module per phase: `section(df, info, plots_dir, md_dir) -> str` (formatting only)."""
