"""From run folders to tables and accuracy-versus-cost figures."""
