"""Shipped studies (`mdist study plan|run NAME`): YAML files read by mdist.study.config."""
