// tsdebug's C++ runner: load a TorchScript archive with libtorch, call one method on inputs
// written by Python (torch.save of the argument tuple), write the outputs back (torch::jit::pickle_save,
// read in Python with torch.load(weights_only=True)).
//
//   tsdebug_runner ARCHIVE METHOD INPUTS OUTPUTS THREADS GRAD [LIBRARY...]
//
// stdout carries one "key<TAB>value" line per fact (load_seconds, run_seconds, error_stage,
// error); the whole error text goes to stderr.  Exit 0 ran, 3 failed (stage named), 2 usage.
#include <ATen/Parallel.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/script.h>

#include <dlfcn.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::string first_line(const std::string& text) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") != std::string::npos) return line;
  }
  return text;
}

int fail(const char* stage, const std::string& message) {
  std::cout << "error_stage\t" << stage << "\n" << "error\t" << first_line(message) << std::endl;
  std::cerr << message << std::endl;
  return 3;
}

// torch.save keeps no element types: a list of tensors comes back as List[Any], which a method
// taking List[Tensor] refuses.  Give each value the type the method's schema declares.
c10::IValue retype(const c10::IValue& value, const c10::TypePtr& type) {
  if (value.isNone()) return value;
  if (auto opt = type->cast<c10::OptionalType>()) return retype(value, opt->getElementType());
  if (auto list_type = type->cast<c10::ListType>()) {
    if (!value.isList()) return value;
    c10::impl::GenericList out(list_type->getElementType());
    for (const c10::IValue& item : value.toListRef()) out.push_back(retype(item, list_type->getElementType()));
    return out;
  }
  if (auto dict_type = type->cast<c10::DictType>()) {
    if (!value.isGenericDict()) return value;
    c10::impl::GenericDict out(dict_type->getKeyType(), dict_type->getValueType());
    for (const auto& item : value.toGenericDict()) {
      out.insert(retype(item.key(), dict_type->getKeyType()), retype(item.value(), dict_type->getValueType()));
    }
    return out;
  }
  if (auto tuple_type = type->cast<c10::TupleType>()) {
    if (!value.isTuple()) return value;
    const auto& items = value.toTupleRef().elements();
    const auto& types = tuple_type->elements();
    if (items.size() != types.size()) return value;
    std::vector<c10::IValue> out;
    for (size_t i = 0; i < items.size(); ++i) out.push_back(retype(items[i], types[i]));
    return c10::ivalue::Tuple::create(std::move(out));
  }
  return value;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 7) {
    std::cerr << "usage: tsdebug_runner ARCHIVE METHOD INPUTS OUTPUTS THREADS GRAD [LIBRARY...]" << std::endl;
    return 2;
  }
  const std::string archive = argv[1], method = argv[2], inputs_path = argv[3], outputs_path = argv[4];
  const int threads = std::stoi(argv[5]);
  const bool grad = std::string(argv[6]) == "1";
  for (int i = 7; i < argc; ++i) {
    // RTLD_GLOBAL: an op library registers its operators in static constructors, and may
    // need symbols of another library loaded before it.
    if (dlopen(argv[i], RTLD_NOW | RTLD_GLOBAL) == nullptr) {
      const char* why = dlerror();
      return fail("library", std::string(argv[i]) + ": " + (why ? why : "dlopen failed"));
    }
    std::cout << "library\t" << argv[i] << std::endl;
  }
  if (threads > 0) at::set_num_threads(threads);
  std::cout << "threads\t" << at::get_num_threads() << std::endl;

  torch::jit::Module module;
  auto t0 = std::chrono::steady_clock::now();
  try {
    module = torch::jit::load(archive);
  } catch (const std::exception& exc) {
    return fail("load", exc.what());
  }
  std::cout << "load_seconds\t" << seconds_since(t0) << std::endl;

  std::vector<c10::IValue> inputs;
  try {
    std::ifstream in(inputs_path, std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    c10::IValue args = torch::jit::pickle_load(bytes);
    if (!args.isTuple()) return fail("inputs", "the inputs file does not hold a tuple");
    for (const auto& v : args.toTupleRef().elements()) inputs.push_back(v);
    const auto& schema_args = module.get_method(method).function().getSchema().arguments();
    for (size_t i = 0; i < inputs.size() && i + 1 < schema_args.size(); ++i) {
      inputs[i] = retype(inputs[i], schema_args[i + 1].type());
    }
  } catch (const std::exception& exc) {
    return fail("inputs", exc.what());
  }

  c10::IValue result;
  try {
    auto fn = module.get_method(method);
    torch::AutoGradMode grad_mode(grad);
    t0 = std::chrono::steady_clock::now();
    result = fn(inputs);
    std::cout << "run_seconds\t" << seconds_since(t0) << std::endl;
  } catch (const std::exception& exc) {
    return fail("run", exc.what());
  }

  try {
    std::vector<char> bytes = torch::jit::pickle_save(result);
    std::ofstream out(outputs_path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) return fail("outputs", "cannot write " + outputs_path);
  } catch (const std::exception& exc) {
    return fail("outputs", exc.what());
  }
  std::cout << "ok\t1" << std::endl;
  return 0;
}
