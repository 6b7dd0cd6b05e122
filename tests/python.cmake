# The Python package (python/, docs/python.md; issue 29), run by Debian's
# python3, which has python3-torch (a python3 earlier on PATH, e.g. pyenv's,
# may not). Each test exits 77 (skipped) without torch; test_python_cuda also
# without a CUDA device. Not in sanitizer builds: Python would have to load
# the sanitizer's runtime first. Included from tests/CMakeLists.txt.
if(TARGET amdim_loader_shared AND NOT AMDIM_SANITIZE)
  find_program(AMDIM_TORCH_PYTHON NAMES python3 PATHS /usr/bin NO_DEFAULT_PATH)
  if(NOT AMDIM_TORCH_PYTHON)
    find_program(AMDIM_TORCH_PYTHON NAMES python3)
  endif()
  if(AMDIM_TORCH_PYTHON)
    set(amdim_py_env "PYTHONPATH=${PROJECT_SOURCE_DIR}/python" "PYTHONDONTWRITEBYTECODE=1"
        "AMDIM_LIBRARY=$<TARGET_FILE:amdim_loader_shared>" "AMDIM_LOAD=$<TARGET_FILE:amdim-load>"
        "AMDIM_PACK=$<TARGET_FILE:amdim-pack>" "AMDIM_PEEK=$<TARGET_FILE:amdim-peek>"
        "AMDIM_STALL_SECONDS=60" "OMP_NUM_THREADS=1")
    foreach(t delivery resume faults attach shard normalize cuda)
      add_test(NAME test_python_${t}
               COMMAND ${AMDIM_TORCH_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/python/test_python_${t}.py)
      set_tests_properties(test_python_${t} PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 120 LABELS python
                           ENVIRONMENT "${amdim_py_env}")
    endforeach()
    # test_python_cuda runs where this python's torch has CUDA; not labelled gpu: tools/gpu-check.sh
    # fails a skipped gpu test on a GPU machine, and Debian's torch there has no CUDA
    # pip install ./python in a fresh venv, offline (CMake builds the native part again: ~30 s on 2 cores)
    add_test(NAME test_python_install
             COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/python/test_python_install.sh ${AMDIM_TORCH_PYTHON}
                     ${PROJECT_SOURCE_DIR} $<TARGET_FILE:amdim-pack>)
    set_tests_properties(test_python_install PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 600 LABELS python)
  endif()
endif()
