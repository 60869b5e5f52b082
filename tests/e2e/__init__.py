"""End-to-end tests: the real `stockaj-rules serve` and `worker` processes, a local sink as their world."""
