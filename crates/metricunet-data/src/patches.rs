//! todo-free placeholder module replaced below
