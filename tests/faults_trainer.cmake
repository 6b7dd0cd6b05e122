# Trainer-side fault tests (issue 26): run directory, checkpoints, outputs.
# metadata values, claimed sizes, non-finite weights, optimiser binding, FIFOs (library level)
amdim_test(test_fault_checkpoint_values)
target_link_libraries(test_fault_checkpoint_values PRIVATE amdim_run)
# the run directory: lock, kill and resume, metrics, classes, memory (amdim-load | amdim-train)
amdim_test(test_fault_rundir $<TARGET_FILE:amdim-load> $<TARGET_FILE:amdim-train>)
target_link_libraries(test_fault_rundir PRIVATE amdim_run)
# amdim-embed: --batch parsing, --out through links, FIFOs and full devices, refused checkpoints
amdim_test(test_fault_embed $<TARGET_FILE:amdim-embed>)
target_link_libraries(test_fault_embed PRIVATE amdim_run)
# its unallocatable model must come back as NULL under AddressSanitizer too
set_tests_properties(test_fault_checkpoint_values PROPERTIES ENVIRONMENT "ASAN_OPTIONS=allocator_may_return_null=1")
