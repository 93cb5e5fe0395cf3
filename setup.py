"""The compiled parts of edge, on the per-request path: the HTTP/1 parser over llhttp
(vendor/llhttp, MIT), the writing of heads, and the HTTP/2 codec over the system's nghttp2
(Debian's libnghttp2-dev to build, libnghttp2-14 to run). Everything else is in setup.cfg."""

from Cython.Build import cythonize
from setuptools import Extension, setup

LLHTTP = "vendor/llhttp"

setup(ext_modules=cythonize(
    [Extension("edge.worker.proto.h1parser",
               sources=["edge/worker/proto/h1parser.pyx", f"{LLHTTP}/src/api.c", f"{LLHTTP}/src/http.c",
                        f"{LLHTTP}/src/llhttp.c"],
               include_dirs=[f"{LLHTTP}/include"],
               extra_compile_args=["-O2"]),
     Extension("edge.worker.heads", sources=["edge/worker/heads.pyx"], extra_compile_args=["-O2"]),
     Extension("edge.worker.proto.h2codec", sources=["edge/worker/proto/h2codec.pyx"], libraries=["nghttp2"],
               extra_compile_args=["-O2"])],
    compiler_directives={"language_level": 3, "boundscheck": False, "wraparound": False},
))
