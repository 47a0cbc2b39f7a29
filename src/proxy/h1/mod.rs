pub mod head;
