"""Electronic shelf labels: rendering, planning and delivery of every label."""
