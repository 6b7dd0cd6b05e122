# The tools' --help texts against their pages in docs/ (tests/test_docs_help.sh):
# every long option a tool's --help prints is in its options block, every
# option the block lists is in --help, and docs' relative links resolve.
# Included from tests/CMakeLists.txt.
add_test(NAME test_docs_help
         COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/test_docs_help.sh ${PROJECT_SOURCE_DIR}/docs
                 $<TARGET_FILE:amdim-pack> $<TARGET_FILE:amdim-load> $<TARGET_FILE:amdim-peek>
                 $<TARGET_FILE:amdim-train> $<TARGET_FILE:amdim-embed> $<TARGET_FILE:amdim-plot>
                 $<TARGET_FILE:amdim-probe> $<TARGET_FILE:amdim-viz>)
set_tests_properties(test_docs_help PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 60 LABELS docs)
