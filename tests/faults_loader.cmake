# Ring and loader fault tests (issue 26).
