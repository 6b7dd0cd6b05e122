# Ring and loader fault tests (issue 26).
amdim_test(test_mem_available)
amdim_test(test_fault_ring $<TARGET_FILE:amdim-load> $<TARGET_FILE:amdim-peek>)
set_tests_properties(test_fault_ring PROPERTIES LABELS tsan)
